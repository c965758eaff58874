"""Physical layer: the state engine, noise, link physics and the channel backend's core."""
