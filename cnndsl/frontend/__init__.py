"""The front end: .cnn text -> AST -> IR.

`grammar` loads grammars/cnn.lark; `parse` turns text into the AST of
`syntax` (with `syntax_errors` naming what went wrong); `imports` reads a
spec's imports once each; `elaborate` runs statements, blocks, loops and
defaults, with `expressions` and `values` for compile-time values, and
`emit` binds each layer call to its op and adds the shape-checked IR node.
Every problem is a CnnError with the span where the user must act.
"""
