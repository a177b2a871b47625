-- Twin of SQLite's m016_devices_by_key (hub/store/migrations/): the lookup of a device by
-- its key (key_reused, hub/fleet/enrollment.py) at every hello from an unknown device.
CREATE INDEX idx_devices_public_key ON devices (public_key);
