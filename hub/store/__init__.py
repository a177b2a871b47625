"""hub/store"""
