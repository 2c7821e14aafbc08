"""Meters over Modbus RTU (serial) and Modbus TCP: catalog, framing, poll scheduling, bus tasks."""
