"""Thin adapters that scale raygen's algorithms out on Ray (the only package besides cli that imports Ray)."""
