"""regiongpt.processing"""
