"""The content gate: checks every image must pass before any tile is planned.

`base` holds the contract (`GateCheck`, `CheckOutcome`, `GateDecision`,
`run_gate`); each check lives in its own module (`area`, `blocklist`,
`moderation`), `rendition` reads the small picture the pixel-based checks
share and `phash` hashes it; `screen` runs validation and the checks on a
source image.
"""
