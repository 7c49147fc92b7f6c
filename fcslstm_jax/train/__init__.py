"""Training: the step, the loop, the loss, devices and processes."""
