"""hub/fleet"""
