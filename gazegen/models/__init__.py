"""LiveGaze's network: encoders (E_h, E_l), gaze fusion (E_g + cross-attention), E_tri, super-resolution."""
