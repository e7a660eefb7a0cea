"""The sending server's side: backup, restore and verify, sync, check, status, rotate."""
