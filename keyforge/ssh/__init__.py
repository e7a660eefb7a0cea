"""The SSH model both hosts share: key wire format, keys, authorized_keys as sshd reads it."""
