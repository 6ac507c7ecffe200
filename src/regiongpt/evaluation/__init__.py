"""regiongpt.evaluation"""
