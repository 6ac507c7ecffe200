"""regiongpt.inference"""
