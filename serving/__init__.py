"""loophub.serving: see README.md, 'Where each room lives'."""
