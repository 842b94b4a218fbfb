"""SeqIO task and mixture registrations (one instruction line per task).

Nothing registers at import: call e.g. `tasks.demo.register_demo_tasks()`.
"""
