"""loophub.widgets: see README.md, 'Where each room lives'."""
