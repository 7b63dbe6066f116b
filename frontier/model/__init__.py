"""frontier.model"""
