"""Side-by-side comparison of detectors on the claims made about FCOS."""
