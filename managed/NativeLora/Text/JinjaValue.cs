using System.Globalization;
using System.Text;

namespace NativeLora.Text;

/// <summary>
/// A runtime value of the template language. The shapes and behaviour follow the Python objects
/// that transformers hands to Jinja (str, int, float, bool, None, list, tuple, dict), because a chat
/// template is written for, and tested against, Python Jinja: printing, truthiness, equality and
/// ordering here are Python's.
/// </summary>
internal abstract class JinjaValue
{
    /// <summary>The Python type name, for error messages and <c>repr</c>.</summary>
    public abstract string TypeName { get; }
}

/// <summary>
/// Jinja's default <c>Undefined</c>: falsy, prints as "", iterates as empty, has length 0; any
/// other use (attribute access, arithmetic, calling it) raises, with the reason it is undefined.
/// </summary>
internal sealed class UndefinedValue(string hint) : JinjaValue
{
    public string Hint { get; } = hint;
    public override string TypeName => "Undefined";
    public JinjaError Fail() => new(Hint);
}

internal sealed class NoneValue : JinjaValue
{
    public static readonly NoneValue Instance = new();
    private NoneValue() { }
    public override string TypeName => "NoneType";
}

internal sealed class BoolValue : JinjaValue
{
    public static readonly BoolValue True = new(true), False = new(false);
    public bool Value { get; }
    private BoolValue(bool value) => Value = value;
    public static BoolValue Of(bool value) => value ? True : False;
    public override string TypeName => "bool";
}

internal sealed class IntValue(long value) : JinjaValue
{
    public long Value { get; } = value;
    public override string TypeName => "int";
}

internal sealed class FloatValue(double value) : JinjaValue
{
    public double Value { get; } = value;
    public override string TypeName => "float";
}

internal sealed class StringValue(string value) : JinjaValue
{
    public static readonly StringValue Empty = new("");
    public string Value { get; } = value;
    public override string TypeName => "str";
}

/// <summary>A Python list or tuple (they print differently and are not equal to each other).</summary>
internal sealed class ListValue(List<JinjaValue> items, bool isTuple = false) : JinjaValue
{
    public List<JinjaValue> Items { get; } = items;
    public bool IsTuple { get; } = isTuple;
    public override string TypeName => IsTuple ? "tuple" : "list";
    public static ListValue Tuple(params JinjaValue[] items) => new(new List<JinjaValue>(items), isTuple: true);
}

/// <summary>A Python dict with string keys; insertion order is kept, as Python's is.</summary>
internal sealed class DictValue(OrderedDictionary<string, JinjaValue> items) : JinjaValue
{
    public OrderedDictionary<string, JinjaValue> Items { get; } = items;
    public DictValue() : this(new OrderedDictionary<string, JinjaValue>()) { }
    public override string TypeName => "dict";
}

/// <summary>
/// An object with named attributes that is not a mapping: a <c>namespace()</c> (the only thing a
/// template may assign attributes on) or a for loop's <c>loop</c>.
/// </summary>
internal sealed class ObjectValue(string typeName, bool assignable) : JinjaValue
{
    public OrderedDictionary<string, JinjaValue> Attributes { get; } = new();
    public bool Assignable { get; } = assignable;
    public override string TypeName { get; } = typeName;
}

/// <summary>Built-in functions, bound methods and macros.</summary>
internal sealed class CallableValue(string name, Func<CallArgs, JinjaValue> invoke) : JinjaValue
{
    public string Name { get; } = name;
    public Func<CallArgs, JinjaValue> Invoke { get; } = invoke;
    public override string TypeName => "function";
}

/// <summary>
/// An error raised while rendering; the interpreter adds the template location. RaisedByTemplate
/// marks the template's own raise_exception(), whose message is passed on unchanged.
/// </summary>
internal sealed class JinjaError(string message, bool raisedByTemplate = false) : Exception(message)
{
    public bool RaisedByTemplate { get; } = raisedByTemplate;
}

/// <summary>Evaluated call arguments, bound to parameter names the way Python binds them.</summary>
internal sealed class CallArgs(List<JinjaValue> positional, List<KeyValuePair<string, JinjaValue>> keywords)
{
    public List<JinjaValue> Positional { get; } = positional;
    public List<KeyValuePair<string, JinjaValue>> Keywords { get; } = keywords;

    /// <summary>One slot per name (null where not given); too many or unknown arguments throw.</summary>
    public JinjaValue?[] Bind(string what, params string[] names)
    {
        if (Positional.Count > names.Length)
            throw new JinjaError($"{what} takes at most {names.Length} argument(s) ({Positional.Count} given)");
        var slots = new JinjaValue?[names.Length];
        for (int i = 0; i < Positional.Count; i++) slots[i] = Positional[i];
        foreach (var (key, value) in Keywords)
        {
            int index = Array.IndexOf(names, key);
            if (index < 0) throw new JinjaError($"{what} got an unexpected keyword argument '{key}'");
            if (slots[index] != null) throw new JinjaError($"{what} got multiple values for argument '{key}'");
            slots[index] = value;
        }
        return slots;
    }
}

/// <summary>Python semantics of values: str/repr, truthiness, ==, ordering, len, iteration.</summary>
internal static class Py
{
    public static JinjaValue Str(string s) => s.Length == 0 ? StringValue.Empty : new StringValue(s);

    public static bool IsTrue(JinjaValue v) => v switch
    {
        UndefinedValue or NoneValue => false,
        BoolValue b => b.Value,
        IntValue i => i.Value != 0,
        FloatValue f => f.Value != 0,
        StringValue s => s.Value.Length > 0,
        ListValue l => l.Items.Count > 0,
        DictValue d => d.Items.Count > 0,
        _ => true,
    };

    /// <summary>What <c>{{ v }}</c> prints: Python's <c>str(v)</c>, with Undefined printing as "".</summary>
    public static string ToStr(JinjaValue v) => v switch
    {
        StringValue s => s.Value,
        UndefinedValue => "",
        _ => Repr(v),
    };

    public static string Repr(JinjaValue v)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, v);
        return sb.ToString();
    }

    private static void AppendRepr(StringBuilder sb, JinjaValue v)
    {
        switch (v)
        {
            case UndefinedValue: break;
            case NoneValue: sb.Append("None"); break;
            case BoolValue b: sb.Append(b.Value ? "True" : "False"); break;
            case IntValue i: sb.Append(i.Value.ToString(CultureInfo.InvariantCulture)); break;
            case FloatValue f: sb.Append(FloatRepr(f.Value)); break;
            case StringValue s: AppendStringRepr(sb, s.Value); break;
            case ListValue l:
                sb.Append(l.IsTuple ? '(' : '[');
                for (int i = 0; i < l.Items.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    AppendRepr(sb, l.Items[i]);
                }
                if (l.IsTuple && l.Items.Count == 1) sb.Append(',');
                sb.Append(l.IsTuple ? ')' : ']');
                break;
            case DictValue d: AppendDictRepr(sb, d.Items); break;
            case ObjectValue o when o.TypeName == "Namespace":
                sb.Append("<Namespace ");
                AppendDictRepr(sb, o.Attributes);
                sb.Append('>');
                break;
            case ObjectValue o: sb.Append('<').Append(o.TypeName).Append(" object>"); break;
            case CallableValue c: sb.Append("<function ").Append(c.Name).Append('>'); break;
        }
    }

    private static void AppendDictRepr(StringBuilder sb, OrderedDictionary<string, JinjaValue> items)
    {
        sb.Append('{');
        bool first = true;
        foreach (var (key, value) in items)
        {
            if (!first) sb.Append(", ");
            first = false;
            AppendStringRepr(sb, key);
            sb.Append(": ");
            AppendRepr(sb, value);
        }
        sb.Append('}');
    }

    /// <summary>Python's repr(str): single quotes unless the text has ' and no ", escapes for the unprintable.</summary>
    private static void AppendStringRepr(StringBuilder sb, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        foreach (var rune in s.EnumerateRunes())
        {
            int c = rune.Value;
            if (c == quote || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (c == ' ' || IsPrintable(rune)) sb.Append(rune.ToString());
            else if (c < 0x100) sb.Append("\\x").Append(c.ToString("x2"));
            else if (c < 0x10000) sb.Append("\\u").Append(c.ToString("x4"));
            else sb.Append("\\U").Append(c.ToString("x8"));
        }
        sb.Append(quote);
    }

    private static bool IsPrintable(Rune rune)
    {
        switch (Rune.GetUnicodeCategory(rune))
        {
            case UnicodeCategory.Control:
            case UnicodeCategory.Format:
            case UnicodeCategory.LineSeparator:
            case UnicodeCategory.ParagraphSeparator:
            case UnicodeCategory.SpaceSeparator:
            case UnicodeCategory.Surrogate:
            case UnicodeCategory.PrivateUse:
            case UnicodeCategory.OtherNotAssigned:
                return false;
            default:
                return true;
        }
    }

    /// <summary>
    /// Python's repr(float): the shortest digits that round-trip, fixed notation for exponents in
    /// [-4, 16), otherwise "1e+20" style; always with a ".0" when integral in fixed notation.
    /// </summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // .NET's "R" gives the same shortest round-trip digits as Python; only the layout differs.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int e = r.IndexOf('E');
        string mantissa = e < 0 ? r : r[..e];
        int exponent = e < 0 ? 0 : int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture);
        int dot = mantissa.IndexOf('.');
        string intPart = dot < 0 ? mantissa : mantissa[..dot];
        string all = intPart + (dot < 0 ? "" : mantissa[(dot + 1)..]);
        string digits = all.TrimStart('0');
        int point = intPart.Length + exponent - (all.Length - digits.Length); // value = 0.digits × 10^point
        digits = digits.TrimEnd('0');
        int sci = point - 1;
        var sb = new StringBuilder();
        if (d < 0) sb.Append('-');
        if (sci >= -4 && sci < 16)
        {
            if (point <= 0) sb.Append("0.").Append('0', -point).Append(digits);
            else if (point >= digits.Length) sb.Append(digits).Append('0', point - digits.Length).Append(".0");
            else sb.Append(digits, 0, point).Append('.').Append(digits, point, digits.Length - point);
        }
        else
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            sb.Append('e').Append(sci < 0 ? '-' : '+').Append(Math.Abs(sci).ToString("00", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }

    /// <summary>Python ==: numbers by value (True == 1 == 1.0), containers element-wise, list ≠ tuple.</summary>
    public static bool Equal(JinjaValue a, JinjaValue b)
    {
        if (ReferenceEquals(a, b)) return true;
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is FloatValue || b is FloatValue) return ToDouble(a) == ToDouble(b);
            return ToLong(a) == ToLong(b);
        }
        switch (a)
        {
            case StringValue sa: return b is StringValue sb && sa.Value == sb.Value;
            case NoneValue: return b is NoneValue;
            case UndefinedValue: return b is UndefinedValue;
            case ListValue la:
                if (b is not ListValue lb || la.IsTuple != lb.IsTuple || la.Items.Count != lb.Items.Count) return false;
                for (int i = 0; i < la.Items.Count; i++)
                    if (!Equal(la.Items[i], lb.Items[i])) return false;
                return true;
            case DictValue da:
                if (b is not DictValue db || da.Items.Count != db.Items.Count) return false;
                foreach (var (key, value) in da.Items)
                    if (!db.Items.TryGetValue(key, out var other) || !Equal(value, other)) return false;
                return true;
            default:
                return false;
        }
    }

    /// <summary>Python ordering (&lt; and friends): numbers, strings by code point, lists element-wise.</summary>
    public static int Compare(JinjaValue a, JinjaValue b, string op)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is FloatValue || b is FloatValue) return ToDouble(a).CompareTo(ToDouble(b));
            return ToLong(a).CompareTo(ToLong(b));
        }
        if (a is StringValue sa && b is StringValue sb) return CompareCodePoints(sa.Value, sb.Value);
        if (a is ListValue la && b is ListValue lb && la.IsTuple == lb.IsTuple)
        {
            for (int i = 0; i < Math.Min(la.Items.Count, lb.Items.Count); i++)
                if (!Equal(la.Items[i], lb.Items[i])) return Compare(la.Items[i], lb.Items[i], op);
            return la.Items.Count.CompareTo(lb.Items.Count);
        }
        if (a is UndefinedValue ua) throw ua.Fail();
        if (b is UndefinedValue ub) throw ub.Fail();
        throw new JinjaError($"'{op}' not supported between instances of '{a.TypeName}' and '{b.TypeName}'");
    }

    private static int CompareCodePoints(string a, string b)
    {
        // Ordinal UTF-16 order differs from code point order only around surrogates; do it right.
        var ea = a.EnumerateRunes();
        var eb = b.EnumerateRunes();
        while (true)
        {
            bool ha = ea.MoveNext(), hb = eb.MoveNext();
            if (!ha || !hb) return ha ? 1 : hb ? -1 : 0;
            int c = ea.Current.Value.CompareTo(eb.Current.Value);
            if (c != 0) return c;
        }
    }

    public static bool IsNumber(JinjaValue v) => v is IntValue or FloatValue or BoolValue;

    public static long ToLong(JinjaValue v) => v switch
    {
        IntValue i => i.Value,
        BoolValue b => b.Value ? 1 : 0,
        FloatValue f => (long)f.Value,
        _ => throw new JinjaError($"expected a number, got '{v.TypeName}'"),
    };

    public static double ToDouble(JinjaValue v) => v switch
    {
        IntValue i => i.Value,
        BoolValue b => b.Value ? 1 : 0,
        FloatValue f => f.Value,
        _ => throw new JinjaError($"expected a number, got '{v.TypeName}'"),
    };

    /// <summary>Python's <c>in</c>: substring, list membership by ==, dict key.</summary>
    public static bool Contains(JinjaValue container, JinjaValue item) => container switch
    {
        StringValue s when item is StringValue sub => s.Value.Contains(sub.Value, StringComparison.Ordinal),
        StringValue => throw new JinjaError($"'in <string>' requires string as left operand, not {item.TypeName}"),
        ListValue l => l.Items.Exists(x => Equal(x, item)),
        DictValue d => item is StringValue key && d.Items.ContainsKey(key.Value),
        UndefinedValue => false, // iterating an Undefined yields nothing
        _ => throw new JinjaError($"argument of type '{container.TypeName}' is not iterable"),
    };

    /// <summary>Python's len(); strings count code points, as Python's str does.</summary>
    public static int Length(JinjaValue v) => v switch
    {
        StringValue s => PyText.Length(s.Value),
        ListValue l => l.Items.Count,
        DictValue d => d.Items.Count,
        UndefinedValue => 0,
        _ => throw new JinjaError($"object of type '{v.TypeName}' has no len()"),
    };

    /// <summary>Python iteration: list items, dict keys, string characters; Undefined is empty.</summary>
    public static List<JinjaValue> Iterate(JinjaValue v) => v switch
    {
        ListValue l => l.Items,
        DictValue d => d.Items.Keys.Select(k => (JinjaValue)Str(k)).ToList(),
        StringValue s => Chars(s.Value).Select(c => (JinjaValue)Str(c)).ToList(),
        UndefinedValue => [],
        _ => throw new JinjaError($"'{v.TypeName}' object is not iterable"),
    };

    /// <summary>The string split into code points (each a one- or two-char string), as Python indexes it.</summary>
    public static List<string> Chars(string s)
    {
        var result = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                result.Add(s.Substring(i, 2));
                i++;
            }
            else result.Add(s[i].ToString());
        }
        return result;
    }

}
