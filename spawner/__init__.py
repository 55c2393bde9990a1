"""loophub.spawner: see README.md, 'Where each room lives'."""
