using System.Text;

namespace NativeLora.Text;

/// <summary>
/// Variables visible at one point of the template. Python Jinja's scoping is followed: a for loop
/// runs each iteration in a fresh child scope (a "set" inside a loop is gone at the next iteration
/// and after the loop, hence namespace()), a macro call gets its own scope, "if" makes none.
/// </summary>
internal sealed class Scope(Scope? parent)
{
    private readonly Dictionary<string, JinjaValue> _variables = new(StringComparer.Ordinal);

    public JinjaValue? Lookup(string name)
    {
        for (var scope = this; scope != null; scope = scope.Parent)
            if (scope._variables.TryGetValue(name, out var value)) return value;
        return null;
    }

    public void Set(string name, JinjaValue value) => _variables[name] = value;

    public Scope? Parent { get; } = parent;
}

/// <summary>Tree-walking evaluator of the parsed template.</summary>
internal sealed class JinjaInterpreter(TimeProvider clock)
{
    private enum Flow { Normal, Break, Continue }

    public TimeProvider Clock { get; } = clock;

    private int _callDepth; // nested macro calls; recursion without end must fail, not overflow the stack
    private const int MaxCallDepth = 100;

    public string Render(List<Node> program, Scope scope)
    {
        var output = new StringBuilder();
        Exec(program, scope, output);
        return output.ToString();
    }

    /// <summary>Runtime errors get the position of the innermost node that failed.</summary>
    private static ChatTemplateException Located(Node node, JinjaError error) =>
        error.RaisedByTemplate
            ? new ChatTemplateException(error.Message, node.Line, node.Column, raisedByTemplate: true)
            : new ChatTemplateException($"line {node.Line}, column {node.Column}: {error.Message}", node.Line, node.Column);

    private Flow Exec(List<Node> nodes, Scope scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            var flow = Exec(node, scope, output);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Node node, Scope scope, StringBuilder output)
    {
        try
        {
            switch (node)
            {
                case TextNode t:
                    output.Append(t.Text);
                    return Flow.Normal;
                case OutputNode o:
                    output.Append(Py.ToStr(Eval(o.Expr, scope)));
                    return Flow.Normal;
                case IfNode i:
                    return Exec(Py.IsTrue(Eval(i.Test, scope)) ? i.Body : i.Else, scope, output);
                case ForNode f:
                    ExecFor(f, scope, output);
                    return Flow.Normal;
                case SetNode s:
                    ExecSet(s, scope);
                    return Flow.Normal;
                case MacroNode m:
                    scope.Set(m.Name, MakeMacro(m.Name, m.Parameters, m.Body, scope));
                    return Flow.Normal;
                case CallBlockNode c:
                    output.Append(Py.ToStr(ExecCallBlock(c, scope)));
                    return Flow.Normal;
                case FilterBlockNode fb:
                {
                    output.Append(Py.ToStr(RenderBody(fb.Body, fb.Filters, scope, out var flow)));
                    return flow; // a {% generation %} block (no filters) may hold a break
                }
                case BreakNode:
                    return Flow.Break;
                case ContinueNode:
                    return Flow.Continue;
                default:
                    throw new JinjaError($"cannot execute {node.GetType().Name}");
            }
        }
        catch (JinjaError e)
        {
            throw Located(node, e);
        }
    }

    private void ExecFor(ForNode f, Scope scope, StringBuilder output)
    {
        var items = Py.Iterate(Eval(f.Iter, scope));
        if (f.Filter != null)
        {
            // "for x in xs if cond": the loop (and loop.length) only sees the items that pass.
            var kept = new List<JinjaValue>();
            foreach (var item in items)
            {
                var probe = new Scope(scope);
                Assign(f.Target, item, probe);
                if (Py.IsTrue(Eval(f.Filter, probe))) kept.Add(item);
            }
            items = kept;
        }
        if (items.Count == 0)
        {
            Exec(f.Else, new Scope(scope), output);
            return;
        }
        for (int i = 0; i < items.Count; i++)
        {
            var iteration = new Scope(scope);
            iteration.Set("loop", MakeLoop(items, i));
            Assign(f.Target, items[i], iteration);
            if (Exec(f.Body, iteration, output) == Flow.Break) break;
        }
    }

    private static ObjectValue MakeLoop(List<JinjaValue> items, int i)
    {
        int n = items.Count;
        var loop = new ObjectValue("LoopContext", assignable: false);
        var a = loop.Attributes;
        a["index"] = new IntValue(i + 1);
        a["index0"] = new IntValue(i);
        a["revindex"] = new IntValue(n - i);
        a["revindex0"] = new IntValue(n - i - 1);
        a["first"] = BoolValue.Of(i == 0);
        a["last"] = BoolValue.Of(i == n - 1);
        a["length"] = new IntValue(n);
        a["depth"] = new IntValue(1);
        a["depth0"] = new IntValue(0);
        a["previtem"] = i > 0 ? items[i - 1] : new UndefinedValue("there is no previous item");
        a["nextitem"] = i < n - 1 ? items[i + 1] : new UndefinedValue("there is no next item");
        a["cycle"] = new CallableValue("loop.cycle", args =>
        {
            if (args.Positional.Count == 0) throw new JinjaError("loop.cycle() needs at least one argument");
            return args.Positional[i % args.Positional.Count];
        });
        return loop;
    }

    /// <summary>Binds a loop or set target: a name, or a tuple of targets unpacked from an iterable.</summary>
    private static void Assign(Expr target, JinjaValue value, Scope scope)
    {
        switch (target)
        {
            case NameExpr n:
                scope.Set(n.Name, value);
                break;
            case ListExpr tuple:
                var items = Py.Iterate(value);
                if (items.Count != tuple.Items.Count)
                    throw new JinjaError(items.Count > tuple.Items.Count
                        ? $"too many values to unpack (expected {tuple.Items.Count})"
                        : $"not enough values to unpack (expected {tuple.Items.Count}, got {items.Count})");
                for (int i = 0; i < items.Count; i++) Assign(tuple.Items[i], items[i], scope);
                break;
            default:
                throw new JinjaError("cannot assign to this expression");
        }
    }

    private void ExecSet(SetNode s, Scope scope)
    {
        var value = s.Value != null ? Eval(s.Value, scope) : RenderBody(s.Body!, s.BodyFilters, scope, out _);
        if (s.Target is GetAttrExpr { Object: NameExpr ns } attr)
        {
            // {% set ns.x = ... %}: the one way to carry state out of a loop.
            if (scope.Lookup(ns.Name) is not ObjectValue { Assignable: true } target)
                throw new JinjaError($"cannot assign attribute on non-namespace object '{ns.Name}'");
            target.Attributes[attr.Name] = value;
            return;
        }
        Assign(s.Target, value, scope);
    }

    /// <summary>
    /// A macro is a function rendering its body in a scope under the one it was defined in. Extra
    /// positional and keyword arguments land in <c>varargs</c> / <c>kwargs</c>; a call block passes
    /// its body as the keyword argument <c>caller</c>.
    /// </summary>
    private CallableValue MakeMacro(string name, List<Parameter> parameters, List<Node> body, Scope definedIn) =>
        new(name, args =>
        {
            if (_callDepth >= MaxCallDepth) throw new JinjaError($"macro '{name}': more than {MaxCallDepth} nested macro calls");
            _callDepth++;
            try
            {
                return InvokeMacro(name, parameters, body, definedIn, args);
            }
            finally
            {
                _callDepth--;
            }
        });

    private JinjaValue InvokeMacro(string name, List<Parameter> parameters, List<Node> body, Scope definedIn, CallArgs args)
    {
        var scope = new Scope(definedIn);
        for (int i = 0; i < parameters.Count; i++)
            scope.Set(parameters[i].Name, i < args.Positional.Count ? args.Positional[i] : new UndefinedValue($"parameter '{parameters[i].Name}' was not provided"));
        scope.Set("varargs", new ListValue(args.Positional.Skip(parameters.Count).ToList(), isTuple: true));
        var extra = new DictValue();
        var given = new HashSet<string>();
        foreach (var (key, value) in args.Keywords)
        {
            int index = parameters.FindIndex(p => p.Name == key);
            if (index >= 0 && index < args.Positional.Count) throw new JinjaError($"macro '{name}' got multiple values for argument '{key}'");
            if (index >= 0 || key == "caller") scope.Set(key, value);
            else extra.Items[key] = value;
            given.Add(key);
        }
        scope.Set("kwargs", extra);
        for (int i = args.Positional.Count; i < parameters.Count; i++)
            if (!given.Contains(parameters[i].Name) && parameters[i].Default is { } defaultValue)
                scope.Set(parameters[i].Name, Eval(defaultValue, scope));
        return RenderBody(body, [], scope, out _);
    }

    /// <summary>A block's body rendered to a string, through the filters of a filter block or a set block.</summary>
    private JinjaValue RenderBody(List<Node> body, List<FilterExpr> filters, Scope scope, out Flow flow)
    {
        var output = new StringBuilder();
        flow = Exec(body, scope, output);
        JinjaValue value = Py.Str(output.ToString());
        foreach (var filter in filters) value = ApplyFilter(filter, value, scope);
        return value;
    }

    private JinjaValue ExecCallBlock(CallBlockNode c, Scope scope)
    {
        var caller = MakeMacro("caller", c.Parameters, c.Body, scope);
        var callee = Eval(c.Call.Callee, scope);
        var args = EvalArgs(c.Call.Args, c.Call.Kwargs, scope);
        args.Keywords.Add(new("caller", caller));
        return Call(callee, args);
    }

    // ---------------------------------------------------------------- expressions

    public JinjaValue Eval(Expr expr, Scope scope)
    {
        try
        {
            return EvalInner(expr, scope);
        }
        catch (JinjaError e)
        {
            throw Located(expr, e);
        }
    }

    private JinjaValue EvalInner(Expr expr, Scope scope)
    {
        switch (expr)
        {
            case ConstExpr c:
                return c.Value;
            case NameExpr n:
                return scope.Lookup(n.Name) ?? new UndefinedValue($"'{n.Name}' is undefined");
            case ListExpr l:
                return new ListValue(l.Items.Select(x => Eval(x, scope)).ToList(), l.IsTuple);
            case DictExpr d:
            {
                var dict = new DictValue();
                foreach (var (keyExpr, valueExpr) in d.Items)
                {
                    if (Eval(keyExpr, scope) is not StringValue key) throw new JinjaError("only string keys are supported in dict literals");
                    dict.Items[key.Value] = Eval(valueExpr, scope);
                }
                return dict;
            }
            case GetAttrExpr g:
                return JinjaBuiltins.GetAttr(Eval(g.Object, scope), g.Name);
            case GetItemExpr g:
                return JinjaBuiltins.GetItem(Eval(g.Object, scope), Eval(g.Key, scope));
            case SliceExpr s:
                return JinjaBuiltins.Slice(Eval(s.Object, scope), EvalOptional(s.Start, scope), EvalOptional(s.Stop, scope), EvalOptional(s.Step, scope));
            case CallExpr c:
                return Call(Eval(c.Callee, scope), EvalArgs(c.Args, c.Kwargs, scope));
            case FilterExpr f:
                return ApplyFilter(f, Eval(f.Operand!, scope), scope);
            case TestExpr t:
                return BoolValue.Of(JinjaBuiltins.Test(t.Name, Eval(t.Operand, scope), EvalArgs(t.Args, t.Kwargs, scope)) != t.Negated);
            case UnaryExpr u:
                return EvalUnary(u.Op, Eval(u.Operand, scope));
            case BinaryExpr b:
                return EvalBinary(b, scope);
            case CompareExpr c:
            {
                var left = Eval(c.First, scope);
                foreach (var (op, operandExpr) in c.Rest)
                {
                    var right = Eval(operandExpr, scope);
                    if (!Compare(op, left, right)) return BoolValue.False;
                    left = right;
                }
                return BoolValue.True;
            }
            case CondExpr c:
                if (Py.IsTrue(Eval(c.Test, scope))) return Eval(c.Then, scope);
                return c.Otherwise != null ? Eval(c.Otherwise, scope)
                    : new UndefinedValue("the inline if-expression evaluated to false and no else section was defined");
            default:
                throw new JinjaError($"cannot evaluate {expr.GetType().Name}");
        }
    }

    private JinjaValue? EvalOptional(Expr? expr, Scope scope) => expr == null ? null : Eval(expr, scope);

    private CallArgs EvalArgs(List<Expr> args, List<(string Name, Expr Value)> kwargs, Scope scope) =>
        args.Count == 0 && kwargs.Count == 0
            ? new CallArgs([], [])
            : new CallArgs(args.Select(a => Eval(a, scope)).ToList(), kwargs.Select(k => new KeyValuePair<string, JinjaValue>(k.Name, Eval(k.Value, scope))).ToList());

    private static JinjaValue Call(JinjaValue callee, CallArgs args) => callee switch
    {
        CallableValue f => f.Invoke(args),
        UndefinedValue u => throw u.Fail(),
        _ => throw new JinjaError($"'{callee.TypeName}' object is not callable"),
    };

    private JinjaValue ApplyFilter(FilterExpr f, JinjaValue operand, Scope scope) =>
        JinjaBuiltins.Filter(f.Name, operand, EvalArgs(f.Args, f.Kwargs, scope), this);

    private static JinjaValue EvalUnary(string op, JinjaValue v)
    {
        if (op == "not") return BoolValue.Of(!Py.IsTrue(v));
        return v switch
        {
            FloatValue f => new FloatValue(op == "-" ? -f.Value : f.Value),
            IntValue or BoolValue => new IntValue(op == "-" ? checked(-Py.ToLong(v)) : Py.ToLong(v)),
            UndefinedValue u => throw u.Fail(),
            _ => throw new JinjaError($"bad operand type for unary {op}: '{v.TypeName}'"),
        };
    }

    private JinjaValue EvalBinary(BinaryExpr b, Scope scope)
    {
        var left = Eval(b.Left, scope);
        // and/or short-circuit and return an operand, as in Python: "x or 'default'".
        if (b.Op == "and") return Py.IsTrue(left) ? Eval(b.Right, scope) : left;
        if (b.Op == "or") return Py.IsTrue(left) ? left : Eval(b.Right, scope);
        var right = Eval(b.Right, scope);
        if (b.Op == "~") return Py.Str(Py.ToStr(left) + Py.ToStr(right));
        return Arithmetic(b.Op, left, right);
    }

    private static bool Compare(string op, JinjaValue a, JinjaValue b) => op switch
    {
        "==" => Py.Equal(a, b),
        "!=" => !Py.Equal(a, b),
        "<" => Py.Compare(a, b, op) < 0,
        "<=" => Py.Compare(a, b, op) <= 0,
        ">" => Py.Compare(a, b, op) > 0,
        ">=" => Py.Compare(a, b, op) >= 0,
        "in" => Py.Contains(b, a),
        "not in" => !Py.Contains(b, a),
        _ => throw new JinjaError($"unknown comparison '{op}'"),
    };

    /// <summary>Python arithmetic: int stays int (checked), / is true division, // and % floor.</summary>
    public static JinjaValue Arithmetic(string op, JinjaValue a, JinjaValue b)
    {
        if (a is UndefinedValue ua) throw ua.Fail();
        if (b is UndefinedValue ub) throw ub.Fail();
        try
        {
            if (Py.IsNumber(a) && Py.IsNumber(b))
            {
                bool isFloat = a is FloatValue || b is FloatValue;
                if (op == "/")
                {
                    double divisor = Py.ToDouble(b);
                    if (divisor == 0) throw new JinjaError("division by zero");
                    return new FloatValue(Py.ToDouble(a) / divisor);
                }
                if (isFloat || (op == "**" && Py.ToLong(b) < 0))
                {
                    double x = Py.ToDouble(a), y = Py.ToDouble(b);
                    if (op is "//" or "%" && y == 0) throw new JinjaError("float division by zero");
                    return new FloatValue(op switch
                    {
                        "+" => x + y,
                        "-" => x - y,
                        "*" => x * y,
                        "//" => Math.Floor(x / y),
                        "%" => FloatMod(x, y),
                        "**" => Math.Pow(x, y),
                        _ => throw new JinjaError($"unknown operator '{op}'"),
                    });
                }
                long i = Py.ToLong(a), j = Py.ToLong(b);
                if (op is "//" or "%" && j == 0) throw new JinjaError("integer division or modulo by zero");
                return new IntValue(op switch
                {
                    "+" => checked(i + j),
                    "-" => checked(i - j),
                    "*" => checked(i * j),
                    "//" => FloorDiv(i, j),
                    "%" => i - FloorDiv(i, j) * j,
                    "**" => IntPow(i, j),
                    _ => throw new JinjaError($"unknown operator '{op}'"),
                });
            }
            switch (op, a, b)
            {
                case ("+", StringValue x, StringValue y): return Py.Str(x.Value + y.Value);
                case ("+", ListValue x, ListValue y) when x.IsTuple == y.IsTuple: return new ListValue([.. x.Items, .. y.Items], x.IsTuple);
                case ("*", StringValue x, IntValue or BoolValue): return Py.Str(Repeat(x.Value, Py.ToLong(b)));
                case ("*", IntValue or BoolValue, StringValue y): return Py.Str(Repeat(y.Value, Py.ToLong(a)));
                case ("*", ListValue x, IntValue or BoolValue):
                    CheckSize(x.Items.Count, Py.ToLong(b));
                    return new ListValue(Enumerable.Repeat(x.Items, (int)Math.Max(0, Py.ToLong(b))).SelectMany(l => l).ToList(), x.IsTuple);
                case ("%", StringValue, _):
                    throw new JinjaError("printf-style string formatting ('...' % args) is not supported");
            }
        }
        catch (OverflowException)
        {
            throw new JinjaError($"integer overflow in '{op}'");
        }
        throw new JinjaError($"unsupported operand type(s) for {op}: '{a.TypeName}' and '{b.TypeName}'");
    }

    private static long FloorDiv(long a, long b)
    {
        long q = a / b;
        if (a % b != 0 && (a < 0) != (b < 0)) q--;
        return q;
    }

    private static double FloatMod(double x, double y)
    {
        double r = x % y; // C# % is C's fmod; Python's result takes the divisor's sign
        if (r != 0 && (r < 0) != (y < 0)) r += y;
        return r;
    }

    private static long IntPow(long x, long y)
    {
        if (x is 0 or 1) return y == 0 ? 1 : x;
        if (x == -1) return y % 2 == 0 ? 1 : -1;
        long result = 1;
        for (long k = 0; k < y; k++) result = checked(result * x); // |x| ≥ 2 overflows within 63 steps
        return result;
    }

    private static string Repeat(string s, long count)
    {
        CheckSize(s.Length, count);
        return count <= 0 ? "" : new StringBuilder(s.Length * (int)count).Insert(0, s, (int)count).ToString();
    }

    private static void CheckSize(long length, long count)
    {
        if (count > 0 && length * (double)count > 100_000_000) throw new JinjaError("repetition result too large");
    }
}
