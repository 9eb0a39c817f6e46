"""Helpers and fixture files shared by the test packages: training runs (train_utils), DeepSpeed toy tags
(tag_factory), the original trainer's files (original_trainer) and the recipe toy (recipe_toy)."""
