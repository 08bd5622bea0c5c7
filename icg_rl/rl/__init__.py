"""RL for diffusion policies: DDIM log-probs, DDPO, reward backprop, group advantages, the in-process trainer."""
