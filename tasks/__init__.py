"""orgrunner's built-in tasks: one module a task, each registered with `@register`."""
