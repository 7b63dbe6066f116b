"""frontier.finetune"""
