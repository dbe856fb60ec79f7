using System.Globalization;

namespace NativeLora.Text;

/// <summary>
/// Recursive-descent parser from tokens to the AST, following Python Jinja's grammar and operator
/// precedence (lowest first): conditional "a if b else c", or, and, not, comparisons (chained, with
/// in / not in), + -, ~, * / // %, **, unary - +, then primaries with .attr, [index], [slice],
/// calls, | filters and "is" tests. Syntax errors name the line, column and construct.
/// </summary>
internal sealed class JinjaParser
{
    private readonly List<Token> _tokens;
    private int _i;
    private readonly Stack<(string Tag, Token Start)> _open = new(); // blocks awaiting their end tag
    private int _loopDepth;
    private int _depth; // nesting of blocks and expressions; bounded so a hostile template cannot overflow the stack
    private const int MaxDepth = 100; // Python's own recursion limit stops at about this nesting

    private JinjaParser(List<Token> tokens) => _tokens = tokens;

    public static List<Node> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        return parser.Subparse(null, out _);
    }

    private Token Cur => _tokens[_i];
    private Token Peek => _tokens[Math.Min(_i + 1, _tokens.Count - 1)];
    private Token Advance() => _tokens[_i++];

    private static ChatTemplateException Error(Token at, string message) =>
        new($"line {at.Line}, column {at.Column}: {message}", at.Line, at.Column);

    private static T At<T>(T node, Token t) where T : Node => node with { Line = t.Line, Column = t.Column };

    private Token Expect(TokenKind kind, string what)
    {
        if (Cur.Kind != kind) throw Error(Cur, $"expected {what}, got {Cur.Describe()}");
        return Advance();
    }

    private void ExpectOp(string op)
    {
        if (!Cur.IsOp(op)) throw Error(Cur, $"expected '{op}', got {Cur.Describe()}");
        _i++;
    }

    private string ExpectName(string what) => Expect(TokenKind.Name, what).Value;

    private void Enter(Token at)
    {
        if (++_depth > MaxDepth) throw Error(at, $"the template nests blocks or expressions more than {MaxDepth} deep");
    }

    private void ExpectBlockEnd(string tag) => Expect(TokenKind.BlockEnd, $"'%}}' to end the '{tag}' tag");

    // ---------------------------------------------------------------- statements

    /// <summary>
    /// Parses nodes until a "{% name" whose name is one of <paramref name="endTags"/>; that "{%" and
    /// the name are consumed, the rest of the tag is left to the caller.
    /// </summary>
    private List<Node> Subparse(string[]? endTags, out string endTag)
    {
        var body = new List<Node>();
        while (true)
        {
            var t = Cur;
            switch (t.Kind)
            {
                case TokenKind.Eof:
                    if (endTags != null)
                    {
                        var (tag, start) = _open.Peek();
                        throw Error(t, $"unexpected end of template: '{{% {tag} %}}' opened at line {start.Line}, column {start.Column} " +
                                       $"was never closed (expected {string.Join(" or ", endTags.Select(e => $"'{{% {e} %}}'"))})");
                    }
                    endTag = "";
                    return body;
                case TokenKind.Text:
                    _i++;
                    body.Add(At(new TextNode(t.Value), t));
                    break;
                case TokenKind.VariableBegin:
                    _i++;
                    var expr = ParseTuple();
                    Expect(TokenKind.VariableEnd, "'}}' to end the expression");
                    body.Add(At(new OutputNode(expr), t));
                    break;
                case TokenKind.BlockBegin:
                    var name = Peek;
                    if (name.Kind != TokenKind.Name) throw Error(name, $"expected a statement name after '{{%', got {name.Describe()}");
                    if (endTags != null && Array.IndexOf(endTags, name.Value) >= 0)
                    {
                        _i += 2;
                        endTag = name.Value;
                        return body;
                    }
                    _i += 2;
                    body.Add(ParseStatement(t, name));
                    break;
                default:
                    throw Error(t, $"unexpected {t.Describe()}");
            }
        }
    }

    /// <summary>Subparse inside a block, tracking it so that an unclosed block is reported where it opened.</summary>
    private List<Node> Block(string tag, Token start, string[] endTags, out string endTag)
    {
        Enter(start);
        _open.Push((tag, start));
        var body = Subparse(endTags, out endTag);
        _open.Pop();
        _depth--;
        return body;
    }

    /// <summary>The rest of a "{% tag ... %}" (its "%}"), its body, and the "{% endtag %}" that closes it.</summary>
    private List<Node> BodyToEnd(string tag, Token start)
    {
        ExpectBlockEnd(tag);
        var body = Block(tag, start, ["end" + tag], out _);
        ExpectBlockEnd("end" + tag);
        return body;
    }

    private Node ParseStatement(Token start, Token name)
    {
        switch (name.Value)
        {
            case "if": return ParseIf(start);
            case "for": return ParseFor(start);
            case "set": return ParseSet(start);
            case "macro": return ParseMacro(start);
            case "call": return ParseCallBlock(start);
            case "filter": return ParseFilterBlock(start);
            case "print":
            {
                var expr = ParseTuple();
                ExpectBlockEnd("print");
                return At(new OutputNode(expr), start);
            }
            case "break":
            case "continue":
                if (_loopDepth == 0) throw Error(name, $"'{{% {name.Value} %}}' outside of a for loop");
                ExpectBlockEnd(name.Value);
                return name.Value == "break" ? At(new BreakNode(), start) : At(new ContinueNode(), start);
            case "generation":
                // transformers' {% generation %} marks assistant text for masks; it renders its body unchanged.
                return At(new FilterBlockNode([], BodyToEnd("generation", start)), start);
            case "block" or "extends" or "include" or "import" or "from" or "with" or "autoescape" or "trans" or "do" or "raw":
                throw Error(name, $"'{{% {name.Value} %}}' is not supported in chat templates here");
            default:
                if (_open.Count > 0 && (name.Value.StartsWith("end", StringComparison.Ordinal) || name.Value is "else" or "elif"))
                {
                    var (tag, open) = _open.Peek();
                    throw Error(name, $"unexpected '{{% {name.Value} %}}'; the innermost open block is '{{% {tag} %}}' from line {open.Line}");
                }
                throw Error(name, $"unknown statement '{{% {name.Value} %}}'");
        }
    }

    private IfNode ParseIf(Token start)
    {
        var test = ParseTuple(withCondexpr: false);
        ExpectBlockEnd("if");
        var body = Block("if", start, ["elif", "else", "endif"], out var tag);
        var otherwise = new List<Node>();
        if (tag == "elif") otherwise.Add(ParseIf(_tokens[_i - 2])); // consumes through endif
        else if (tag == "else")
        {
            ExpectBlockEnd("else");
            otherwise = Block("if", start, ["endif"], out _);
            ExpectBlockEnd("endif");
        }
        else ExpectBlockEnd("endif");
        return At(new IfNode(test, body, otherwise), start);
    }

    private ForNode ParseFor(Token start)
    {
        var target = ParseAssignTarget(withNamespace: false, extraEnd: "in");
        if (!Cur.IsName("in")) throw Error(Cur, $"expected 'in' in the for loop, got {Cur.Describe()}");
        _i++;
        var iter = ParseTuple(withCondexpr: false, extraEnd: "recursive");
        Expr? filter = null;
        if (Cur.IsName("if"))
        {
            _i++;
            filter = ParseExpression();
        }
        if (Cur.IsName("recursive")) throw Error(Cur, "recursive for loops ('recursive') are not supported");
        ExpectBlockEnd("for");
        _loopDepth++;
        var body = Block("for", start, ["endfor", "else"], out var tag);
        _loopDepth--;
        var otherwise = new List<Node>();
        if (tag == "else")
        {
            ExpectBlockEnd("else");
            otherwise = Block("for", start, ["endfor"], out _);
        }
        ExpectBlockEnd("endfor");
        return At(new ForNode(target, iter, filter, body, otherwise), start);
    }

    private SetNode ParseSet(Token start)
    {
        var target = ParseAssignTarget(withNamespace: true, extraEnd: null);
        if (Cur.IsOp("="))
        {
            _i++;
            var value = ParseTuple();
            ExpectBlockEnd("set");
            return At(new SetNode(target, value, null, []), start);
        }
        var filters = Cur.IsOp("|") ? ParseFilterChain(startInline: false) : [];
        return At(new SetNode(target, null, BodyToEnd("set", start), filters), start);
    }

    /// <summary>A name, a tuple of names, or (for set) a namespace attribute "ns.attr".</summary>
    private Expr ParseAssignTarget(bool withNamespace, string? extraEnd)
    {
        var first = Cur;
        if (withNamespace && Cur.Kind == TokenKind.Name && Peek.IsOp("."))
        {
            var ns = At(new NameExpr(Advance().Value), first);
            _i++;
            return At(new GetAttrExpr(ns, ExpectName("an attribute name after '.'")), first);
        }
        var target = ParseTuple(simplified: true, extraEnd: extraEnd);
        CheckAssignable(target, first);
        return target;
    }

    private static void CheckAssignable(Expr target, Token at)
    {
        switch (target)
        {
            case NameExpr n when n.Name is "true" or "false" or "none" or "loop":
                throw Error(at, $"cannot assign to '{n.Name}'");
            case NameExpr:
                return;
            case ListExpr { IsTuple: true } tuple:
                foreach (var item in tuple.Items) CheckAssignable(item, at);
                return;
            default:
                throw Error(at, "can only assign to a name, a tuple of names or a namespace attribute");
        }
    }

    private MacroNode ParseMacro(Token start)
    {
        string name = ExpectName("the macro name");
        var parameters = ParseSignature();
        int loops = _loopDepth;
        _loopDepth = 0; // break/continue cannot cross a macro boundary
        var body = BodyToEnd("macro", start);
        _loopDepth = loops;
        return At(new MacroNode(name, parameters, body), start);
    }

    private List<Parameter> ParseSignature()
    {
        var parameters = new List<Parameter>();
        ExpectOp("(");
        ParseCommaList(")", () =>
        {
            var nameToken = Cur;
            string name = ExpectName("a parameter name");
            if (parameters.Exists(p => p.Name == name)) throw Error(nameToken, $"duplicate parameter '{name}'");
            Expr? defaultValue = null;
            if (Cur.IsOp("="))
            {
                _i++;
                defaultValue = ParseExpression();
            }
            parameters.Add(new Parameter(name, defaultValue));
        });
        return parameters;
    }

    private CallBlockNode ParseCallBlock(Token start)
    {
        var parameters = Cur.IsOp("(") ? ParseSignature() : [];
        var callToken = Cur;
        if (ParseExpression() is not CallExpr call) throw Error(callToken, "expected a macro call after '{% call'");
        return At(new CallBlockNode(call, parameters, BodyToEnd("call", start)), start);
    }

    private FilterBlockNode ParseFilterBlock(Token start)
    {
        var filters = ParseFilterChain(startInline: true);
        return At(new FilterBlockNode(filters, BodyToEnd("filter", start)), start);
    }

    // ---------------------------------------------------------------- expressions

    private bool IsTupleEnd(string? extraEnd) =>
        Cur.Kind is TokenKind.VariableEnd or TokenKind.BlockEnd or TokenKind.Eof || Cur.IsOp(")")
        || (extraEnd != null && Cur.IsName(extraEnd));

    /// <summary>Comma-separated expressions; more than one (or a trailing comma) make a tuple.</summary>
    private Expr ParseTuple(bool withCondexpr = true, bool explicitParentheses = false, bool simplified = false, string? extraEnd = null)
    {
        var start = Cur;
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0) ExpectOp(",");
            if (IsTupleEnd(extraEnd)) break;
            items.Add(simplified ? ParsePrimary() : withCondexpr ? ParseExpression() : ParseOr());
            if (Cur.IsOp(",")) isTuple = true;
            else break;
        }
        if (!isTuple)
        {
            if (items.Count > 0) return items[0];
            if (!explicitParentheses) throw Error(Cur, $"expected an expression, got {Cur.Describe()}");
        }
        return At(new ListExpr(items, IsTuple: true), start);
    }

    private Expr ParseExpression()
    {
        var start = Cur;
        Enter(start);
        var expr = ParseOr();
        while (Cur.IsName("if"))
        {
            _i++;
            var test = ParseOr();
            Expr? otherwise = null;
            if (Cur.IsName("else"))
            {
                _i++;
                otherwise = ParseExpression();
            }
            expr = At(new CondExpr(test, expr, otherwise), start);
        }
        _depth--;
        return expr;
    }

    /// <summary>
    /// The left-associative binary operators, one precedence level each, lowest first: "or" and "and"
    /// (names) come above "not" and the comparisons, whose operands are the arithmetic levels (operators)
    /// down to "**", whose operands are the unary sign and the primaries.
    /// </summary>
    private static readonly (TokenKind Kind, string[] Ops)[] BinaryLevels =
    [
        (TokenKind.Name, ["or"]),
        (TokenKind.Name, ["and"]),
        (TokenKind.Operator, ["+", "-"]),
        (TokenKind.Operator, ["~"]),
        (TokenKind.Operator, ["*", "/", "//", "%"]),
        (TokenKind.Operator, ["**"]),
    ];
    private const int AndLevel = 1, ArithmeticLevel = 2;

    private Expr ParseOr() => ParseBinary(0);

    /// <summary>One level of <see cref="BinaryLevels"/>: operands of the next level down, joined left to right.</summary>
    private Expr ParseBinary(int level)
    {
        var start = Cur;
        var (kind, ops) = BinaryLevels[level];
        var left = ParseBinaryOperand(level);
        while (Cur.Kind == kind && Array.IndexOf(ops, Cur.Value) >= 0)
        {
            string op = Advance().Value;
            left = At(new BinaryExpr(op, left, ParseBinaryOperand(level)), start);
        }
        return left;
    }

    private Expr ParseBinaryOperand(int level) =>
        level == AndLevel ? ParseNot() : level + 1 < BinaryLevels.Length ? ParseBinary(level + 1) : ParseUnary();

    private Expr ParseNot()
    {
        var start = Cur;
        if (Cur.IsName("not"))
        {
            _i++;
            Enter(start);
            var operand = ParseNot();
            _depth--;
            return At(new UnaryExpr("not", operand), start);
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var start = Cur;
        var first = ParseBinary(ArithmeticLevel);
        var rest = new List<(string, Expr)>();
        while (true)
        {
            string op;
            if (Cur.Kind == TokenKind.Operator && Cur.Value is "==" or "!=" or "<" or "<=" or ">" or ">=") op = Advance().Value;
            else if (Cur.IsName("in")) { _i++; op = "in"; }
            else if (Cur.IsName("not") && Peek.IsName("in")) { _i += 2; op = "not in"; }
            else break;
            rest.Add((op, ParseBinary(ArithmeticLevel)));
        }
        return rest.Count == 0 ? first : At(new CompareExpr(first, rest), start);
    }

    /// <summary>As in Jinja, "-x | f" is "(-x) | f": the sign binds tighter than filters and tests.</summary>
    private Expr ParseUnary(bool withFilter = true)
    {
        var start = Cur;
        Expr node;
        if (Cur.IsOp("-") || Cur.IsOp("+"))
        {
            string op = Advance().Value;
            Enter(start);
            node = At(new UnaryExpr(op, ParseUnary(withFilter: false)), start);
            _depth--;
        }
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilterAndTests(node) : node;
    }

    private Expr ParsePrimary()
    {
        var t = Advance();
        switch (t.Kind)
        {
            case TokenKind.Name:
                return t.Value switch
                {
                    "true" or "True" => At(new ConstExpr(BoolValue.True), t),
                    "false" or "False" => At(new ConstExpr(BoolValue.False), t),
                    "none" or "None" => At(new ConstExpr(NoneValue.Instance), t),
                    _ => At(new NameExpr(t.Value), t),
                };
            case TokenKind.String:
            {
                string value = t.Value;
                while (Cur.Kind == TokenKind.String) value += Advance().Value; // "a" "b" is "ab"
                return At(new ConstExpr(Py.Str(value)), t);
            }
            case TokenKind.Integer:
                if (!long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long i))
                    throw Error(t, $"integer literal {t.Value} is too large");
                return At(new ConstExpr(new IntValue(i)), t);
            case TokenKind.Float:
                return At(new ConstExpr(new FloatValue(double.Parse(t.Value, CultureInfo.InvariantCulture))), t);
            case TokenKind.Operator when t.Value == "(":
            {
                var inner = ParseTuple(explicitParentheses: true);
                ExpectOp(")");
                return inner;
            }
            case TokenKind.Operator when t.Value == "[":
            {
                var items = new List<Expr>();
                ParseCommaList("]", () => items.Add(ParseExpression()));
                return At(new ListExpr(items, IsTuple: false), t);
            }
            case TokenKind.Operator when t.Value == "{":
            {
                var items = new List<(Expr, Expr)>();
                ParseCommaList("}", () =>
                {
                    var key = ParseExpression();
                    ExpectOp(":");
                    items.Add((key, ParseExpression()));
                });
                return At(new DictExpr(items), t);
            }
            default:
                throw Error(t, $"unexpected {t.Describe()}");
        }
    }

    /// <summary>
    /// Items separated by commas up to the closing bracket <paramref name="close"/> (a trailing comma is
    /// allowed), which is consumed: list and dict literals, call arguments, macro parameters.
    /// </summary>
    private void ParseCommaList(string close, Action parseItem)
    {
        for (bool first = true; !Cur.IsOp(close); first = false)
        {
            if (!first)
            {
                ExpectOp(",");
                if (Cur.IsOp(close)) break;
            }
            parseItem();
        }
        _i++;
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            var t = Cur;
            if (t.IsOp("."))
            {
                _i++;
                var attr = Advance();
                if (attr.Kind == TokenKind.Name) node = At(new GetAttrExpr(node, attr.Value), t);
                else if (attr.Kind == TokenKind.Integer) node = At(new GetItemExpr(node, At(new ConstExpr(new IntValue(long.Parse(attr.Value, CultureInfo.InvariantCulture))), attr)), t);
                else throw Error(attr, $"expected a name or number after '.', got {attr.Describe()}");
            }
            else if (t.IsOp("[")) node = ParseSubscript(node);
            else if (t.IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    /// <summary><c>[key]</c> or a slice <c>[start:stop:step]</c> with any part left out.</summary>
    private Expr ParseSubscript(Expr node)
    {
        var t = Advance(); // '['
        Expr? start = null;
        if (!Cur.IsOp(":"))
        {
            start = ParseExpression();
            if (Cur.IsOp("]"))
            {
                _i++;
                return At(new GetItemExpr(node, start), t);
            }
            if (Cur.IsOp(",")) throw Error(Cur, "tuple subscripts (obj[a, b]) are not supported");
        }
        ExpectOp(":");
        Expr? stop = null, step = null;
        if (!Cur.IsOp(":") && !Cur.IsOp("]")) stop = ParseExpression();
        if (Cur.IsOp(":"))
        {
            _i++;
            if (!Cur.IsOp("]")) step = ParseExpression();
        }
        ExpectOp("]");
        return At(new SliceExpr(node, start, stop, step), t);
    }

    private (List<Expr> Args, List<(string, Expr)> Kwargs) ParseCallArgs()
    {
        var open = Cur;
        ExpectOp("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        ParseCommaList(")", () =>
        {
            if (Cur.IsOp("*") || Cur.IsOp("**")) throw Error(Cur, "argument unpacking (*args, **kwargs) is not supported");
            if (Cur.Kind == TokenKind.Name && Peek.IsOp("="))
            {
                string key = Advance().Value;
                _i++;
                kwargs.Add((key, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error(Cur, "positional argument follows keyword argument");
                args.Add(ParseExpression());
            }
        });
        return (args, kwargs);
    }

    private Expr ParseCall(Expr callee)
    {
        var (args, kwargs) = ParseCallArgs();
        return new CallExpr(callee, args, kwargs) { Line = callee.Line, Column = callee.Column }; // errors point at the callee
    }

    private Expr ParseFilterAndTests(Expr node)
    {
        while (true)
        {
            if (Cur.IsOp("|")) node = ParseFilterChain(startInline: false, node)[^1];
            else if (Cur.IsName("is")) node = ParseTest(node);
            else if (Cur.IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    /// <summary>
    /// One or more "| name(args)" filters, each applied to the previous; with
    /// <paramref name="startInline"/> the first has no pipe (filter blocks). Returns each stage.
    /// </summary>
    private List<FilterExpr> ParseFilterChain(bool startInline, Expr? operand = null)
    {
        var chain = new List<FilterExpr>();
        while (Cur.IsOp("|") || startInline)
        {
            if (!startInline) _i++;
            startInline = false;
            var t = Cur;
            string name = ExpectName("a filter name");
            if (!JinjaBuiltins.IsJinjaFilter(name)) throw Error(t, $"no filter named '{name}'");
            var (args, kwargs) = Cur.IsOp("(") ? ParseCallArgs() : ([], []);
            var filter = At(new FilterExpr(operand, name, args, kwargs), t);
            chain.Add(filter);
            operand = filter;
        }
        return chain;
    }

    private Expr ParseTest(Expr node)
    {
        var t = Advance(); // 'is'
        bool negated = false;
        if (Cur.IsName("not"))
        {
            _i++;
            negated = true;
        }
        var nameToken = Cur;
        string name = ExpectName("a test name after 'is'");
        if (!JinjaBuiltins.IsJinjaTest(name)) throw Error(nameToken, $"no test named '{name}'");
        List<Expr> args = [];
        List<(string, Expr)> kwargs = [];
        if (Cur.IsOp("(")) (args, kwargs) = ParseCallArgs();
        else if ((Cur.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float || Cur.IsOp("(") || Cur.IsOp("[") || Cur.IsOp("{"))
                 && !Cur.IsName("else") && !Cur.IsName("or") && !Cur.IsName("and"))
        {
            // Jinja's one-argument form without parentheses: "x is divisibleby 3", "x is eq 'a'".
            if (Cur.IsName("is")) throw Error(Cur, "tests cannot be chained with 'is'");
            args = [ParsePostfix(ParsePrimary())];
        }
        return At(new TestExpr(node, name, args, kwargs, negated), t);
    }
}
