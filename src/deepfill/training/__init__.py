"""Training: the LightningModule, its losses, callbacks, image grids and sweep job records."""
