"""regiongpt.datagen"""
