"""Importing this module registers every subsystem's config section and store migrations.

`gateway.config.load_config` only knows the sections registered when it runs, and `Store.open` only applies the
migrations registered when it runs; both the CLI and the composition root import this first.
"""

import gateway.auth.settings  # [auth]
import gateway.auth.tokenstore  # token tables
import gateway.loadmgmt.config  # [load]
import gateway.meters.billing  # session_meter_energy table
import gateway.meters.config  # [[buses]], [[meters]]
import gateway.uplink  # noqa: F401  [uplink] and the uplink's tables
