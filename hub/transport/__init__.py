"""hub/transport"""
