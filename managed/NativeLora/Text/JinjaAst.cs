namespace NativeLora.Text;

/// <summary>A node of the parsed template; the position is where it starts (1-based), for errors.</summary>
internal abstract record Node
{
    public int Line { get; init; }
    public int Column { get; init; }
}

// ---- statements ----

internal sealed record TextNode(string Text) : Node;

/// <summary><c>{{ expr }}</c> (and <c>{% print expr %}</c>).</summary>
internal sealed record OutputNode(Expr Expr) : Node;

/// <summary><c>{% if %}</c>; an <c>elif</c> is an IfNode alone in <see cref="Else"/>.</summary>
internal sealed record IfNode(Expr Test, List<Node> Body, List<Node> Else) : Node;

/// <summary><c>{% for target in iter if filter %}body{% else %}empty{% endfor %}</c>.</summary>
internal sealed record ForNode(Expr Target, Expr Iter, Expr? Filter, List<Node> Body, List<Node> Else) : Node;

/// <summary><c>{% set target = value %}</c>, or the block form <c>{% set target %}body{% endset %}</c>.</summary>
internal sealed record SetNode(Expr Target, Expr? Value, List<Node>? Body, List<FilterExpr> BodyFilters) : Node;

internal sealed record Parameter(string Name, Expr? Default);

internal sealed record MacroNode(string Name, List<Parameter> Parameters, List<Node> Body) : Node;

/// <summary><c>{% call(params) macro(args) %}body{% endcall %}</c>: body becomes the macro's <c>caller()</c>.</summary>
internal sealed record CallBlockNode(CallExpr Call, List<Parameter> Parameters, List<Node> Body) : Node;

/// <summary><c>{% filter name(args) %}body{% endfilter %}</c>: the rendered body goes through the filters.</summary>
internal sealed record FilterBlockNode(List<FilterExpr> Filters, List<Node> Body) : Node;

internal sealed record BreakNode : Node;

internal sealed record ContinueNode : Node;

// ---- expressions ----

internal abstract record Expr : Node;

internal sealed record ConstExpr(JinjaValue Value) : Expr;

internal sealed record NameExpr(string Name) : Expr;

internal sealed record ListExpr(List<Expr> Items, bool IsTuple) : Expr;

internal sealed record DictExpr(List<(Expr Key, Expr Value)> Items) : Expr;

/// <summary><c>obj.name</c>: attribute first, then item (Jinja's getattr).</summary>
internal sealed record GetAttrExpr(Expr Object, string Name) : Expr;

/// <summary><c>obj[key]</c> and <c>obj.0</c>: item first, then attribute (Jinja's getitem).</summary>
internal sealed record GetItemExpr(Expr Object, Expr Key) : Expr;

internal sealed record SliceExpr(Expr Object, Expr? Start, Expr? Stop, Expr? Step) : Expr;

internal sealed record CallExpr(Expr Callee, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr;

/// <summary><c>operand | name(args)</c>; the operand is null inside filter blocks and set blocks.</summary>
internal sealed record FilterExpr(Expr? Operand, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr;

/// <summary><c>operand is [not] name(args)</c>.</summary>
internal sealed record TestExpr(Expr Operand, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, bool Negated) : Expr;

/// <summary>Unary "-", "+" and "not".</summary>
internal sealed record UnaryExpr(string Op, Expr Operand) : Expr;

/// <summary>Arithmetic, "~", "and" and "or".</summary>
internal sealed record BinaryExpr(string Op, Expr Left, Expr Right) : Expr;

/// <summary>A comparison chain: <c>a &lt; b &lt;= c</c> means <c>a &lt; b and b &lt;= c</c>, as in Python.</summary>
internal sealed record CompareExpr(Expr First, List<(string Op, Expr Operand)> Rest) : Expr;

/// <summary><c>then if test else otherwise</c>; without else it yields Undefined when the test fails.</summary>
internal sealed record CondExpr(Expr Test, Expr Then, Expr? Otherwise) : Expr;
