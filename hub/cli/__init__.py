"""hub/cli"""
