"""EG3D-style triplane rendering: rays, plane sampling, decoder MLP, ray sampling, compositing."""
