"""S-VRT's current network family (github S-VRT/S-VRT @2ac8c0b) with its parameter names."""
