"""hub/registry"""
