import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

/** MariaDB Connector/J through the proxy: args URL USER PASSWORD. Prints one line per check. */
public class ClientCheck {
    public static void main(String[] args) throws Exception {
        try (Connection conn = DriverManager.getConnection(args[0], args[1], args[2])) {
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT pan, cvv FROM cards WHERE id = 2")) {
                rs.next();
                System.out.println("read " + rs.getString(1) + " " + rs.getString(2));
            }
            try (Statement st = conn.createStatement()) {
                st.execute("DROP TABLE scratch");
                System.out.println("deny none");
            } catch (SQLException e) {
                System.out.println("deny " + e.getErrorCode() + " " + e.getSQLState());
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, pan FROM cards WHERE id = ?")) {
                ps.setInt(1, 2);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("prepared " + rs.getInt(1) + " " + rs.getString(2));
                }
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT count(*) FROM cards WHERE pan LIKE ?")) {
                ps.setString(1, "4111%");
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("oracle " + rs.getInt(1));
                }
            }
        }
    }
}
