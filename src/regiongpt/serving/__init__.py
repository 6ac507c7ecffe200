"""regiongpt.serving"""
