"""The setup infrastructure: one construct per AWS concern, composed by `setup_stack`."""
