"""Simulators for chargegate: EVs and charger hardware behind the agent's HAL (SimHal), a fleet runner driving
real agents against a gateway, the demo, and (owned by their modules) Modbus meters, an eMSP and a card reader."""
