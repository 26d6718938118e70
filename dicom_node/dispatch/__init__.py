"""Dispatch: send each finished job's results to every destination, with retries."""
