"""regiongpt.data"""
