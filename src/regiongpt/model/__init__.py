"""regiongpt.model"""
