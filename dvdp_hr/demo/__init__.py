"""`dvdp-hr demo` (`make demo`): DVDP vs a fixed-resolution baseline on real photographs, trained
for the same denoiser FLOPs with DeepSpeed on 2 CPU processes, sampled, scored (multi-scale SWD,
per-stage SWD; FID/KID with the user's Inception weights) and plotted."""
