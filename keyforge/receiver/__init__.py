"""The receiving host's side: install, capture, the gate, snapshot, audit, explain."""
