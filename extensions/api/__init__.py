"""The loophub API: a JupyterHub-managed service at /services/loophub/.

Routes only; the logic they call lives in the loophub package.
"""
