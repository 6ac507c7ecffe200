"""regiongpt.training"""
