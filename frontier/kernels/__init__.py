"""frontier.kernels"""
