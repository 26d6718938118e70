"""Receive: the Store SCP and its upper layer, the spool it writes, the extra receiving processes."""
