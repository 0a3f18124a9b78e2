"""bachglass: glassy dynamics of deep recurrent networks learning Bach chorales."""

__version__ = "0.1.0"
