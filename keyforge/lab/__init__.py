"""A private sshd and the demo that runs the whole system on one machine."""
