"""notifications: hears every registration once, in its own consumer group on ``users``."""
